//! Whether the parts a payment needs are usable: what `/readyz` and the running gateway report.

use crate::audit::AuditLog;
use crate::broker;
use crate::keys::cipher::FieldCipher;
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// The parts a payment needs, each usable or not (`RunningGateway::readiness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The database answers a query.
    pub database: bool,
    /// The audit journal takes records (writable, backlog within bounds, clocks agree).
    pub audit_journal: bool,
    /// The key provider is not known to be failing (KMS not in its `keys.unavailable_for_ms`).
    pub key_provider: bool,
    /// The embedded broker accepts the front's connections; in external broker mode, the
    /// gateway is connected to the external broker.
    pub broker: bool,
    /// The pipeline runs.
    pub pipeline: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.database && self.audit_journal && self.key_provider && self.broker && self.pipeline
    }
}

/// How the broker's readiness is told.
#[derive(Clone)]
pub(crate) enum BrokerProbe {
    /// rumqttd on its loopback port, behind the front's secret.
    Embedded {
        address: SocketAddr,
        secret: broker::BrokerSecret,
    },
    /// Whether the connection to the external broker is up (`crate::upstream`).
    External(watch::Receiver<bool>),
}

/// What readiness is measured on; shared by the running gateway and `/readyz`.
#[derive(Clone)]
pub struct Probes {
    pub(crate) store: Store,
    pub(crate) broker: BrokerProbe,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) cipher: Arc<FieldCipher>,
    pub(crate) pipeline_ended: watch::Receiver<bool>,
}

impl Probes {
    /// Each part probed, each probe bounded by a second.
    pub async fn readiness(&self) -> Readiness {
        let within = std::time::Duration::from_secs(1);
        let database = matches!(
            tokio::time::timeout(within, self.store.ping()).await,
            Ok(Ok(()))
        );
        let broker = match &self.broker {
            BrokerProbe::Embedded { address, secret } => {
                tokio::time::timeout(within, broker::accepts_sessions(*address, secret))
                    .await
                    .unwrap_or(false)
            }
            BrokerProbe::External(connected) => *connected.borrow(),
        };
        Readiness {
            database,
            audit_journal: !self.audit.blocked(),
            key_provider: self.cipher.provider().available(),
            broker,
            pipeline: !*self.pipeline_ended.borrow(),
        }
    }
}
