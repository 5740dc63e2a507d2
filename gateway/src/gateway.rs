//! Assembles and starts a gateway: store, receipt key, TLS, the embedded broker, the pipeline
//! attached to it by a local link, and the device front.

use crate::audit::worm::AnyWorm;
use crate::audit::{self, AuditLog};
use crate::broker;
use crate::config::{BrokerMode, Settings};
use crate::front::{self, Front};
use crate::keys::cipher::FieldCipher;
use crate::keys::provider::KeyProvider;
use crate::metrics::Metrics;
use crate::pipeline::devices::DeviceCache;
use crate::pipeline::{self, Pipeline};
use crate::products::Rules;
use crate::store::Store;
use crate::tls;
use anyhow::{Context, Result};
use paygate_core::audit::{AuditOutcome, EventType};
use paygate_core::envelope::{SigningAlgorithm, SigningKey};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::readiness::BrokerProbe;
pub use crate::readiness::{Probes, Readiness};

/// A gateway that is up: its address, its store and its counters.
pub struct RunningGateway {
    /// The device listener (none in external broker mode: devices connect to that broker).
    pub mqtt_address: Option<SocketAddr>,
    http_address: Option<SocketAddr>,
    probes: Probes,
    /// rumqttd's internal loopback listener (guarded by the broker secret; exposed for tests
    /// that prove it cannot be used to bypass the front). None in external broker mode.
    pub broker_address: Option<SocketAddr>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub cipher: Arc<FieldCipher>,
    shutdown: watch::Sender<bool>,
    shipper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set once the pipeline has stopped: after a shutdown, or because one of its tasks failed.
    pipeline_ended: watch::Receiver<bool>,
}

impl RunningGateway {
    /// Stops accepting devices and stops the pipeline. (rumqttd 0.20 has no stop; its threads
    /// end with the process.)
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Whether the pipeline has stopped. While the gateway runs this is `false`; `true`
    /// without a shutdown means a pipeline task failed and no request is being decided.
    pub fn pipeline_ended(&self) -> bool {
        *self.pipeline_ended.borrow()
    }

    /// Resolves once the pipeline has stopped (see [`RunningGateway::pipeline_ended`]).
    pub async fn wait_pipeline_ended(&self) {
        let mut ended = self.pipeline_ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Whether the gateway can decide payments now, part by part: what `/readyz` reports.
    pub async fn readiness(&self) -> Readiness {
        self.probes.readiness().await
    }

    /// The HTTP API's address, when `http.enabled`.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// A clean stop: records `audit_stopped`, seals the last segment, then stops the tasks
    /// (the shipper makes one last attempt to ship it).
    pub async fn stop(&self) {
        if let Err(error) = self.audit.stop().await {
            tracing::error!(%error, "the audit log could not be sealed at stop");
        }
        self.shutdown();
        // the shipper makes its last attempt on shutdown; give it a bounded time
        let shipper = self
            .shipper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(shipper) = shipper {
            if tokio::time::timeout(Duration::from_secs(30), shipper)
                .await
                .is_err()
            {
                tracing::warn!("audit segments left in the journal; they ship at the next start");
            }
        }
    }
}

pub fn load_receipt_key(settings: &Settings) -> Result<SigningKey> {
    let path = settings.resolve(&settings.receipts.signing_key);
    let pkcs8 = std::fs::read(&path)
        .with_context(|| format!("reading the receipt signing key {}", path.display()))?;
    Ok(SigningKey::from_pkcs8(
        SigningAlgorithm::Ed25519,
        &settings.receipts.key_id,
        &pkcs8,
    )?)
}

/// Starts everything and returns once the device listener is bound.
/// A PostgreSQL URL that does not ask for the server's certificate to be checked talks to
/// whoever answers (`prefer`, sqlx's default, even falls back to clear text): said at start.
fn warn_unverified_database(url: &str) {
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let verified = url.contains("sslmode=verify-full") || url.contains("sslmode=verify-ca");
    if postgres && !verified {
        tracing::warn!(
            "database.url does not say sslmode=verify-full: the PostgreSQL server's certificate is not checked and the connection may be in clear (docs/operations.md, \"Database\")"
        );
    }
}

pub async fn start(settings: Settings) -> Result<RunningGateway> {
    crate::descriptors::ensure(settings.mqtt.connections_max)?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    warn_unverified_database(&settings.database_url());
    let tuning = crate::store::SqliteTuning {
        busy_timeout_ms: settings.database.sqlite_busy_timeout_ms,
        acquire_timeout_ms: settings.database.acquire_timeout_ms,
        cache_mib: settings.database.sqlite_cache_mib,
    };
    let store = Store::open_tuned(
        &settings.database_url(),
        settings.database.connections_max,
        tuning,
    )
    .await?
    .with_audit_key(crate::audit::outbox_key(&settings)?);
    let receipt_key = Arc::new(load_receipt_key(&settings)?);
    let metrics = Arc::new(Metrics::default());
    let audit = AuditLog::open(&settings, store.clone(), metrics.clone())
        .await
        .context("opening the audit journal")?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    // the write-once store is checked before anything is accepted: a misconfigured bucket
    // (no versioning, no Object Lock) stops the start
    let worm = AnyWorm::audit_store(&settings)
        .await
        .context("checking the audit store")?;
    let witness = AnyWorm::witness(&settings)
        .await
        .context("checking the audit witness store")?;
    audit::shipper::claim_store(&worm, audit.log_id()).await?;
    if let Some(witness) = &witness {
        audit::shipper::claim_store(witness, audit.log_id())
            .await
            .context("the witness store")?;
    }
    let shipper = tokio::spawn(audit::shipper::run(
        audit.clone(),
        worm,
        witness,
        shutdown_rx.clone(),
    ));
    tokio::spawn(audit::run_sealer(audit.clone(), shutdown_rx.clone()));
    audit
        .record(audit.system_event(EventType::AuditStarted, AuditOutcome::Success))
        .await
        .context("writing the first audit record")?;
    // PCI DSS 10.6: audit times come from synchronised clocks; a gateway whose clock is off
    // the database server's does not start (and stops approving if it drifts later)
    let skew = audit
        .check_clock()
        .await
        .context("comparing the clock with the database server's")?;
    if skew.unsigned_abs() > settings.audit.clock_skew_max_ms {
        anyhow::bail!(
            "the gateway's clock is {skew} ms off the database server's, more than audit.clock_skew_max_ms = {}: synchronise both with NTP (PCI DSS 10.6)",
            settings.audit.clock_skew_max_ms
        );
    }
    let key_provider = KeyProvider::from_settings(&settings.keys, &settings.data_dir)
        .await
        .context("opening the key provider")?;
    let cipher = Arc::new(FieldCipher::new(
        key_provider,
        store.pool().clone(),
        settings.keys.clone(),
    ));
    crate::clock::set_business_utc_offset_minutes(settings.wallet.limits_utc_offset_minutes);
    if crate::ledger::align_calendar(&store, settings.wallet.limits_utc_offset_minutes)
        .await
        .context("recounting the per-day limit counters")?
    {
        tracing::warn!(
            offset_minutes = settings.wallet.limits_utc_offset_minutes,
            "the business time zone changed: per-day limit counters recounted"
        );
    }
    let (upi_tx, upi_rx) = mpsc::channel(settings.upi.handoff_queue_max);
    tokio::spawn(crate::upi::run_worker(
        store.clone(),
        crate::upi::SandboxSwitch::new(
            store.clone(),
            Duration::from_millis(settings.upi.sandbox_delay_ms),
        ),
        settings.upi.clone(),
        upi_rx,
        shutdown_rx.clone(),
    ));
    let devices = Arc::new(DeviceCache::new(
        settings.pipeline.device_cache_ttl_ms,
        settings.pipeline.device_cache_entries_max,
    ));
    let admission = crate::admission::Registry::new(
        crate::admission::Limits::from_settings(&settings.mqtt),
        settings.pipeline.queue_depth_max,
    );
    tokio::spawn(crate::admission::run_sweeper(
        admission.clone(),
        shutdown_rx.clone(),
    ));
    let pipeline = Pipeline::new(pipeline::Context {
        admission: admission.clone(),
        store: store.clone(),
        receipt_key: receipt_key.clone(),
        settings: settings.pipeline.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        cipher: cipher.clone(),
        rules: Rules {
            wallet: settings.wallet.clone(),
            identity: settings.identity.clone(),
            rewards: settings.rewards.clone(),
            upi: settings.upi.clone(),
            notifier: crate::identity::DevNotifier {
                path: settings.resolve(&settings.identity.notifier_file),
            },
        },
        devices: devices.clone(),
        upi_handoffs: upi_tx,
    });
    let (queue_tx, queue_rx) = mpsc::channel(settings.pipeline.queue_depth_max);
    if settings.rewards.enabled {
        tokio::spawn(run_rewards_jobs(
            store.clone(),
            settings.rewards.job_interval_ms,
            shutdown_rx.clone(),
        ));
    }
    let (disconnects, _) = tokio::sync::broadcast::channel(256);
    let plane = DevicePlane {
        pipeline,
        queue_tx,
        queue_rx,
        admission,
        store: store.clone(),
        receipt_key,
        metrics: metrics.clone(),
        disconnects: disconnects.clone(),
        log_id: audit.log_id().to_owned(),
    };
    let (pipeline_ended_tx, pipeline_ended) = watch::channel(false);
    let started = match settings.broker.mode {
        BrokerMode::Embedded => {
            start_embedded(&settings, plane, pipeline_ended_tx, shutdown_rx.clone()).await?
        }
        BrokerMode::External => start_external(&settings, plane, pipeline_ended_tx, &shutdown_rx)?,
    };
    let probes = Probes {
        store: store.clone(),
        broker: started.broker,
        audit: audit.clone(),
        cipher: cipher.clone(),
        pipeline_ended: pipeline_ended.clone(),
    };
    let http_address = if settings.http.enabled {
        Some(
            crate::http::start(
                &settings,
                crate::http::Services {
                    store: store.clone(),
                    metrics: metrics.clone(),
                    audit: audit.clone(),
                    probes: probes.clone(),
                    cipher: cipher.clone(),
                    devices: devices.clone(),
                    disconnects,
                },
                shutdown_rx,
            )
            .await?,
        )
    } else {
        None
    };
    Ok(RunningGateway {
        mqtt_address: started.mqtt_address,
        broker_address: started.broker_address,
        store,
        metrics,
        audit,
        cipher,
        shutdown,
        shipper: std::sync::Mutex::new(Some(shipper)),
        pipeline_ended,
        http_address,
        probes,
    })
}

/// What the device side needs, whichever broker the requests come from.
struct DevicePlane {
    pipeline: Pipeline,
    queue_tx: mpsc::Sender<pipeline::Inbound>,
    queue_rx: mpsc::Receiver<pipeline::Inbound>,
    admission: Arc<crate::admission::Registry>,
    store: Store,
    receipt_key: Arc<SigningKey>,
    metrics: Arc<Metrics>,
    disconnects: tokio::sync::broadcast::Sender<paygate_core::DeviceId>,
    log_id: String,
}

/// The device side once started.
struct StartedPlane {
    mqtt_address: Option<SocketAddr>,
    broker_address: Option<SocketAddr>,
    broker: BrokerProbe,
}

/// The embedded broker: rumqttd on loopback, the pipeline on its local link, and the front
/// (device TLS, the guard, admission) on `mqtt.listen`.
async fn start_embedded(
    settings: &Settings,
    plane: DevicePlane,
    pipeline_ended: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
) -> Result<StartedPlane> {
    let acceptor = TlsAcceptor::from(tls::server_config(settings)?);
    let embedded = broker::start(
        settings.mqtt.connections_max,
        settings.mqtt.packet_bytes_max,
        settings.pipeline.queue_depth_max,
        settings.mqtt.device_inflight_max,
    )
    .await?;
    let (link_tx, link_rx) = embedded.pipeline_link;
    tokio::spawn(pipeline::consume_link(
        link_rx,
        plane.queue_tx,
        shutdown.clone(),
    ));
    let pipeline = plane.pipeline;
    let queue_rx = plane.queue_rx;
    tokio::spawn(async move {
        pipeline::run(pipeline, queue_rx, link_tx).await;
        let _ = pipeline_ended.send(true);
    });
    let listener = TcpListener::bind(settings.mqtt.listen)
        .await
        .with_context(|| format!("binding the device listener {}", settings.mqtt.listen))?;
    let mqtt_address = listener.local_addr()?;
    let front = Arc::new(Front {
        disconnects: plane.disconnects,
        connection_slots: Arc::new(Semaphore::new(settings.mqtt.connections_max)),
        admission: plane.admission,
        settings: settings.mqtt.clone(),
        acceptor,
        broker_address: embedded.address,
        broker_secret: embedded.secret.clone(),
        store: plane.store,
        receipt_key: plane.receipt_key,
        metrics: plane.metrics,
    });
    tokio::spawn(front::serve(front, listener, shutdown));
    tracing::info!(%mqtt_address, "gateway listening for devices");
    Ok(StartedPlane {
        mqtt_address: Some(mqtt_address),
        broker_address: Some(embedded.address),
        broker: BrokerProbe::Embedded {
            address: embedded.address,
            secret: embedded.secret,
        },
    })
}

/// External broker mode: the pipeline consumes from an existing broker (`crate::upstream`);
/// that broker owns device TLS and the topic ACLs, so no device listener opens here.
fn start_external(
    settings: &Settings,
    plane: DevicePlane,
    pipeline_ended: watch::Sender<bool>,
    shutdown: &watch::Receiver<bool>,
) -> Result<StartedPlane> {
    let upstream = crate::upstream::connect(settings, &plane.log_id)
        .context("configuring the connection to the external broker")?;
    let outlet = upstream.outlet();
    let connected = upstream.connected();
    tokio::spawn(upstream.consume(plane.queue_tx, shutdown.clone()));
    let pipeline = plane.pipeline;
    let queue_rx = plane.queue_rx;
    tokio::spawn(async move {
        pipeline::run(pipeline, queue_rx, outlet).await;
        let _ = pipeline_ended.send(true);
    });
    tracing::info!(
        host = %settings.broker.external.host,
        port = settings.broker.external.port,
        "gateway consuming device requests from the external broker"
    );
    Ok(StartedPlane {
        mqtt_address: None,
        broker_address: None,
        broker: BrokerProbe::External(connected),
    })
}

/// Activates pending reward points and expires old ones every `interval_ms` until shutdown.
/// A failed run is logged and tried again at the next tick (each lot expires once).
async fn run_rewards_jobs(store: Store, interval_ms: u64, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match crate::rewards::run_jobs(&store, crate::clock::now_ms()).await {
                    Ok(run) if run.lots_activated + run.lots_expired > 0 => {
                        tracing::info!(?run, "reward points activated and expired");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "reward points job failed; retried next tick"),
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
