//! The load generator: many terminals, each its own mutual-TLS MQTT connection and device
//! key, publishing signed payments at QoS 1 and timing each from publish to the receipt
//! (verified under the gateway's receipt key, or for the mosquitto reference, the echo
//! matched). Closed loop: each terminal keeps `inflight` requests outstanding. Open loop:
//! each terminal sends at a fixed rate whatever the answers, latency counted from when the
//! request was due.

use anyhow::{Context, Result};
use paygate_agent::DeviceBundle;
use paygate_core::receipt::Outcome;
use paygate_core::request::{Operation, Request, REQUEST_CONTENT_TYPE};
use paygate_core::topics::{replies_topic, requests_topic};
use paygate_core::{AccountId, IdempotencyKey, Money};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each terminal keeps this many requests in flight.
    Closed { inflight: usize },
    /// All terminals together offer this many requests per second.
    Open { rate_per_s: u64 },
}

/// What the replies are checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// Signed receipts from paygate, verified.
    Receipts,
    /// The request bytes echoed back (the mosquitto reference's responder).
    Echo,
}

pub struct Load {
    pub host: String,
    pub port: u16,
    pub bundles: Vec<DeviceBundle>,
    pub merchant: AccountId,
    pub amount: Money,
    pub mode: Mode,
    pub replies: Replies,
    pub warmup: Duration,
    pub duration: Duration,
    /// Counters start above any used before on these devices.
    pub counter_base: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Outcomes {
    pub sent: u64,
    pub approved: u64,
    pub other: u64,
    pub unanswered: u64,
    pub latencies_us: Vec<u64>,
    pub measured: Duration,
}

impl Outcomes {
    pub fn approved_per_s(&self) -> f64 {
        self.approved as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile in milliseconds; `permille` 500 is the median.
    pub fn percentile_ms(&self, permille: usize) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0.0,
            len => sorted[((len - 1) * permille.min(1000) + 500) / 1000] as f64 / 1000.0,
        }
    }
}

struct Shared {
    outcomes: Mutex<Outcomes>,
    started: Instant,
    warmup: Duration,
    end: Instant,
}

impl Shared {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.started + self.warmup && at < self.end
    }
}

/// Runs the load and returns what it saw in the measured window (after the warm-up).
pub async fn run(load: Load) -> Result<Outcomes> {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        outcomes: Mutex::new(Outcomes::default()),
        started,
        warmup: load.warmup,
        end: started + load.warmup + load.duration,
    });
    let terminals = load.bundles.len().max(1);
    let mut tasks = Vec::new();
    for (index, bundle) in load.bundles.into_iter().enumerate() {
        let terminal = Terminal {
            host: load.host.clone(),
            port: load.port,
            bundle: Arc::new(bundle),
            merchant: load.merchant.clone(),
            amount: load.amount,
            replies: load.replies,
            counter: load.counter_base,
        };
        let shared = shared.clone();
        let mode = load.mode;
        // spread the connections' start over the first 200 ms
        let delay = Duration::from_micros(200_000 * index as u64 / terminals as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            terminal.run(mode, terminals, shared).await
        }));
    }
    for task in tasks {
        if let Err(error) = task.await.context("terminal task")? {
            tracing::warn!(%error, "a bench terminal failed");
        }
    }
    let mut outcomes = shared
        .outcomes
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    outcomes.measured = load.duration;
    Ok(outcomes)
}

struct Terminal {
    host: String,
    port: u16,
    bundle: Arc<DeviceBundle>,
    merchant: AccountId,
    amount: Money,
    replies: Replies,
    counter: u64,
}

type Waiting = Arc<Mutex<HashMap<String, Instant>>>;

impl Terminal {
    async fn run(mut self, mode: Mode, terminals: usize, shared: Arc<Shared>) -> Result<()> {
        let device = self.bundle.device_id.clone();
        let mut options = MqttOptions::new(device.as_str(), self.host.clone(), self.port);
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                paygate_agent::tls_config(&self.bundle)?,
            )))
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(64 * 1024, 16 * 1024)
            .set_inflight(1_000);
        let (client, mut eventloop) = AsyncClient::new(options, 1_024);
        eventloop.network_options.set_tcp_nodelay(true);
        let waiting: Waiting = Arc::new(Mutex::new(HashMap::new()));
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let (answered_tx, mut answered) = tokio::sync::mpsc::channel::<()>(1_024);
        let reply_topic = replies_topic(&device);
        let listener = {
            let (client, waiting, shared, bundle) = (
                client.clone(),
                waiting.clone(),
                shared.clone(),
                self.bundle.clone(),
            );
            let replies = self.replies;
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(reply_topic.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(true);
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let (key, approved) = match judge(replies, &bundle, &publish.payload) {
                                Some(judged) => judged,
                                None => continue,
                            };
                            let sent_at = waiting.lock().ok().and_then(|mut w| w.remove(&key));
                            if let Some(sent_at) = sent_at {
                                record(&shared, sent_at, approved);
                                let _ = answered_tx.try_send(());
                            }
                        }
                        Ok(_) => {}
                        Err(_) if Instant::now() >= shared.end => return,
                        Err(error) => {
                            tracing::debug!(%error, "bench terminal connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r)).await;
        match mode {
            Mode::Closed { inflight } => {
                for _ in 0..inflight.max(1) {
                    self.send(&client, &waiting, Instant::now()).await?;
                }
                while Instant::now() < shared.end {
                    match tokio::time::timeout(Duration::from_secs(10), answered.recv()).await {
                        Ok(Some(())) => self.send(&client, &waiting, Instant::now()).await?,
                        Ok(None) => break,
                        // a lost answer: count it and keep the loop going
                        Err(_) => self.send(&client, &waiting, Instant::now()).await?,
                    }
                }
            }
            Mode::Open { rate_per_s } => {
                let per_terminal = (rate_per_s as f64 / terminals as f64).max(0.001);
                let interval = Duration::from_secs_f64(1.0 / per_terminal);
                let mut due = Instant::now();
                while due < shared.end {
                    tokio::time::sleep_until(due.into()).await;
                    self.send(&client, &waiting, due).await?;
                    due += interval;
                }
            }
        }
        // answers still on their way get a grace period, then count as unanswered
        let grace = Instant::now() + Duration::from_secs(5);
        while Instant::now() < grace && waiting.lock().map(|w| !w.is_empty()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = waiting
            .lock()
            .map(|w| w.values().filter(|at| shared.measuring(**at)).count())
            .unwrap_or(0);
        if let Ok(mut outcomes) = shared.outcomes.lock() {
            outcomes.unanswered += left as u64;
        }
        let _ = client.disconnect().await;
        listener.abort();
        Ok(())
    }

    async fn send(&mut self, client: &AsyncClient, waiting: &Waiting, due: Instant) -> Result<()> {
        self.counter += 1;
        let request = Request {
            device_id: self.bundle.device_id.clone(),
            idempotency_key: IdempotencyKey::parse(&hex::encode(rand::random::<[u8; 16]>()))?,
            counter: self.counter,
            created_at_ms: crate::clock::now_ms(),
            operation: Operation::MerchantPayment {
                merchant_id: self.merchant.clone(),
                amount: self.amount,
                payer: None,
            },
        };
        let envelope = self
            .bundle
            .signing_key
            .seal(REQUEST_CONTENT_TYPE, &request.to_payload());
        let key = match self.replies {
            Replies::Receipts => request.idempotency_key.to_string(),
            Replies::Echo => hex::encode(sha2::Sha256::digest(&envelope)),
        };
        if let Ok(mut waiting) = waiting.lock() {
            waiting.insert(key, due);
        }
        client
            .publish(
                requests_topic(&self.bundle.device_id),
                QoS::AtLeastOnce,
                false,
                envelope,
            )
            .await?;
        Ok(())
    }
}

use sha2::Digest;

/// The key a reply answers and whether it approves.
fn judge(replies: Replies, bundle: &DeviceBundle, payload: &[u8]) -> Option<(String, bool)> {
    match replies {
        Replies::Echo => Some((hex::encode(sha2::Sha256::digest(payload)), true)),
        Replies::Receipts => {
            let verified = bundle.verify_receipt(payload).ok()?;
            let key = verified.receipt.idempotency_key.clone()?;
            Some((key, verified.receipt.outcome == Outcome::Approved))
        }
    }
}

fn record(shared: &Shared, sent_at: Instant, approved: bool) {
    if !shared.measuring(sent_at) {
        return;
    }
    let latency = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Ok(mut outcomes) = shared.outcomes.lock() {
        outcomes.sent += 1;
        outcomes.latencies_us.push(latency);
        if approved {
            outcomes.approved += 1;
        } else {
            outcomes.other += 1;
        }
    }
}
