//! The driver: three tasks that overlap the stages of consecutive batches, in arrival order.
//!
//! - The **checker** verifies and prepares requests as they arrive and gathers them into the
//!   next batch until the decider asks for it: one request when the gateway is idle, up to
//!   `pipeline.batch_size_max` under load, so the batch follows the load.
//! - The **decider** decides and records one batch at a time, and runs the tick (challenge
//!   expiry, UPI settlement) every `pipeline.tick_interval_ms` between batches.
//! - The **publisher** makes each decided batch's audit records durable in the journal, then
//!   hands its UPI payments to the worker and publishes its replies.
//!
//! Invariants: batches are decided one at a time, in the order their requests arrived, so
//! deduplication sees every earlier batch committed. Nothing leaves before its audit record
//! is durable. Every hand-off holds at most one batch, so at most four batches are in flight
//! (one gathering, one deciding or waiting to pass it on, one in the hand-off, one releasing)
//! and the bounded queue holds the rest. At
//! shutdown the queue closes and each task ends after the batch it holds; if a task fails, the
//! others are stopped at once (a transaction in progress rolls back; nothing undecided leaves).

use super::batch::{Batch, Inbound};
use super::{Decided, Pipeline};
use bytes::Bytes;
use paygate_core::topics::{device_of_requests_topic, replies_topic};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Takes device requests off the broker's local link into the bounded pipeline queue. A full
/// queue holds the link (rumqttd then keeps or drops per its own limits; devices resend).
pub async fn consume_link(
    mut link_rx: LinkRx,
    queue: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let notification = tokio::select! {
            notification = link_rx.next() => notification,
            _ = shutdown.changed() => return,
        };
        match notification {
            Ok(Some(Notification::Forward(forward))) => {
                let topic = String::from_utf8_lossy(&forward.publish.topic);
                let Some(device) = device_of_requests_topic(&topic) else {
                    tracing::warn!(%topic, "message on an unexpected topic ignored");
                    continue;
                };
                let inbound = Inbound {
                    device,
                    message: forward.publish.payload,
                    received_at: Instant::now(),
                    ack: None,
                };
                if queue.send(inbound).await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if link_rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "pipeline link closed");
                return;
            }
        }
    }
}

/// Where the publisher sends replies, and how it acknowledges the requests they answer: the
/// embedded broker's local link, or an external broker's client (`crate::upstream`). The
/// pipeline is the same in both modes.
pub trait Outlet: Send + 'static {
    /// Publishes one reply (QoS 1). A reply that cannot be handed over is dropped with a
    /// warning: its decision is durable and the device's resend gets the stored receipt.
    fn publish(&mut self, topic: String, payload: Vec<u8>) -> impl Future<Output = ()> + Send;
    /// Acknowledges requests whose batch is released (decided, recorded, journaled, replied).
    fn acknowledge(&mut self, acks: Vec<super::Ack>) -> impl Future<Output = ()> + Send;
}

impl Outlet for LinkTx {
    async fn publish(&mut self, topic: String, payload: Vec<u8>) {
        publish_reply(self, topic, payload).await;
    }

    /// The local link needs none: rumqttd acknowledged the device's PUBLISH itself.
    async fn acknowledge(&mut self, _acks: Vec<super::Ack>) {}
}

/// Runs the pipeline until its queue closes (shutdown) or one of its tasks fails.
pub async fn run(pipeline: Pipeline, queue: mpsc::Receiver<Inbound>, outlet: impl Outlet) {
    let pipeline = Arc::new(pipeline);
    let (ask_tx, ask_rx) = mpsc::channel::<()>(1);
    let (checked_tx, checked_rx) = mpsc::channel::<Batch>(1);
    let (decided_tx, decided_rx) = mpsc::channel::<Decided>(1);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(checker(pipeline.clone(), queue, ask_rx, checked_tx));
    tasks.spawn(decider(pipeline.clone(), ask_tx, checked_rx, decided_tx));
    tasks.spawn(publisher(pipeline, decided_rx, outlet));
    while let Some(ended) = tasks.join_next().await {
        let Err(error) = ended else {
            continue;
        };
        if !error.is_cancelled() {
            // stop the others at once: an idle checker would not notice, and a decider would
            // decide the next batch for a publisher that is gone (its transaction rolls back)
            tracing::error!(%error, "a pipeline task failed; the pipeline stops");
            tasks.abort_all();
        }
    }
}

/// Gathers, verifies and prepares requests; hands the batch over when the decider asks.
async fn checker(
    pipeline: Arc<Pipeline>,
    mut queue: mpsc::Receiver<Inbound>,
    mut asks: mpsc::Receiver<()>,
    checked: mpsc::Sender<Batch>,
) {
    let batch_size_max = pipeline.ctx.settings.batch_size_max.max(1);
    let mut arrived = Vec::with_capacity(batch_size_max);
    let mut gathering: Option<Batch> = None;
    let mut asked = false;
    let mut queue_open = true;
    loop {
        if asked {
            if let Some(mut batch) = gathering.take() {
                // decided at the moment it is handed over (freshness was checked on arrival)
                batch.now_ms = batch.now_ms.max(crate::clock::now_ms());
                if checked.send(batch).await.is_err() {
                    return;
                }
                asked = false;
                continue;
            }
            if !queue_open {
                return;
            }
        }
        let room = batch_size_max - gathering.as_ref().map_or(0, |b| b.slots.len());
        tokio::select! {
            ask = asks.recv(), if !asked => match ask {
                Some(()) => asked = true,
                None => return,
            },
            received = queue.recv_many(&mut arrived, room), if room > 0 && queue_open => {
                if received == 0 {
                    queue_open = false;
                    if gathering.is_none() {
                        return;
                    }
                    continue;
                }
                pipeline.ctx.metrics.set_pipeline_queue_depth(queue.len());
                let batch = gathering
                    .get_or_insert_with(|| Batch::new(Vec::new(), crate::clock::now_ms()));
                batch.admit(arrived.drain(..));
                pipeline.check(batch).await;
            }
        }
    }
}

/// Asks for a batch, decides it, passes it on; the tick runs while it waits.
async fn decider(
    pipeline: Arc<Pipeline>,
    asks: mpsc::Sender<()>,
    mut checked: mpsc::Receiver<Batch>,
    decided: mpsc::Sender<Decided>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        pipeline.ctx.settings.tick_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if asks.send(()).await.is_err() {
            return;
        }
        let next = loop {
            tokio::select! {
                batch = checked.recv() => match batch {
                    Some(batch) => break pipeline.decide(batch).await,
                    None => return,
                },
                _ = tick.tick() => {
                    let replies = pipeline.tick().await;
                    if !replies.is_empty() {
                        let ticked = Decided { replies, handoffs: Vec::new(), answered: Vec::new(), acks: Vec::new() };
                        if decided.send(ticked).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        if decided.send(next).await.is_err() {
            return;
        }
    }
}

/// Releases each decided batch (journal first), publishes its replies, then acknowledges its
/// requests: a request is acknowledged only once it is durably decided, so a gateway that
/// dies before that leaves it with the broker, which delivers it again.
async fn publisher(
    pipeline: Arc<Pipeline>,
    mut decided: mpsc::Receiver<Decided>,
    mut outlet: impl Outlet,
) {
    while let Some(mut batch) = decided.recv().await {
        let acks = std::mem::take(&mut batch.acks);
        for reply in pipeline.release(batch).await {
            outlet
                .publish(replies_topic(&reply.device), reply.receipt)
                .await;
        }
        if !acks.is_empty() {
            outlet.acknowledge(acks).await;
        }
    }
}

async fn publish_reply(link_tx: &mut LinkTx, topic: String, payload: Vec<u8>) {
    let payload = Bytes::from(payload);
    for _ in 0..100 {
        match link_tx.try_publish(topic.clone(), payload.clone()) {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    // the decision is durable; the device's resend gets the stored receipt
    tracing::warn!(%topic, "reply dropped: broker link full");
}
