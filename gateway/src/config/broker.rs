//! `[broker]`: where device requests come from. `embedded` (the default) runs rumqttd behind
//! paygate's own TLS front; `external` consumes them from an existing broker (Mosquitto, EMQX,
//! AWS IoT Core) through a shared subscription, and that broker owns device TLS and the topic
//! ACLs (`deploy/mosquitto/`, `deploy/emqx/`, `deploy/aws-iot/`, docs/operations.md).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    Embedded,
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    pub mode: BrokerMode,
    pub external: ExternalBrokerSettings,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            mode: BrokerMode::Embedded,
            external: ExternalBrokerSettings::default(),
        }
    }
}

/// The gateway as a client of an existing broker, over mutual TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalBrokerSettings {
    pub host: String,
    pub port: u16,
    /// CA certificates that issue the broker's certificate (PEM). The client certificate and
    /// key come from `paygate certs issue-broker-client` in development.
    pub ca: PathBuf,
    /// The gateway's client certificate and key for the broker (PEM).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The MQTT client id ("": `paygate-` and the audit log id, unique per replica and stable
    /// per data directory). Two replicas must never share one.
    pub client_id: String,
    /// Keep the broker session across connections (MQTT clean session off): a replica that
    /// restarts gets back what it had not acknowledged. Off by default: Mosquitto keeps
    /// queueing a share group's new requests to a member's session while it is gone, so a
    /// replica removed for good (a scale-in) would hold its share of new requests until
    /// `persistent_client_expiration`. With a clean session a gone replica's session ends with
    /// its connection, new requests go to the live ones, and the devices resend what it had
    /// not answered (each resend gets the first answer).
    pub persistent_session: bool,
    /// Replicas in one share group split the requests between them (`$share/<group>/...`).
    /// A secret (`env:NAME`, `file:PATH`; at least 16 characters): Mosquitto does not check
    /// subscriptions against its ACL, so a device that knew the name could join the group
    /// and take a turn at every request, which the broker then drops (the device may not
    /// read them). A device subscribing to a group of its own only gets copies, which the
    /// broker drops too.
    pub share_group: super::Secret,
    pub keep_alive_s: u64,
    /// Requests taken from the broker and not yet acknowledged, at most: match the broker's
    /// window towards the gateway (Mosquitto `max_inflight_messages`).
    pub inflight_max: usize,
    /// Wait before reconnecting after the connection to the broker is lost.
    pub reconnect_delay_ms: u64,
}

impl Default for ExternalBrokerSettings {
    fn default() -> Self {
        ExternalBrokerSettings {
            host: "127.0.0.1".into(),
            port: 8883,
            ca: "pki/ca.cert.pem".into(),
            client_cert: "pki/broker-client.cert.pem".into(),
            client_key: "pki/broker-client.key.pem".into(),
            client_id: String::new(),
            persistent_session: false,
            share_group: super::Secret::default(),
            keep_alive_s: 30,
            inflight_max: 1000,
            reconnect_delay_ms: 1000,
        }
    }
}
