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
    /// The MQTT client id ("": `paygate-` and the audit log id, stable per data directory,
    /// so a restarted replica resumes its session and gets back what it had not acknowledged).
    pub client_id: String,
    /// Replicas in one share group split the requests between them (`$share/<group>/...`).
    pub share_group: String,
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
            share_group: "paygate".into(),
            keep_alive_s: 30,
            inflight_max: 1000,
            reconnect_delay_ms: 1000,
        }
    }
}
