//! The edge agent, as a library for terminal firmware and wallet apps and as the
//! `paygate-agent` command.
//!
//! A payment's life on the device: build the request (next counter, fresh idempotency key),
//! sign it with the device key, write it to the durable outbox (fsync), publish it over mutual
//! TLS MQTT with a persistent session, and wait for the gateway's signed receipt, publishing
//! the same bytes again on a timer until one arrives. The outbox entry goes only when a final
//! receipt that verifies under the gateway's key is in hand; at start, every entry left by a
//! reboot or an outage is sent again with its original bytes, so the gateway answers it from
//! its idempotency record instead of paying twice.

pub mod bundle;
pub mod outbox;

pub use bundle::DeviceBundle;

use anyhow::{bail, Context, Result};
use outbox::Outbox;
use paygate_core::envelope::{UnverifiedEnvelope, VerifyingKey};
use paygate_core::receipt::{Outcome, Receipt, RECEIPT_CONTENT_TYPE};
use paygate_core::request::{Operation, Request, REQUEST_CONTENT_TYPE};
use paygate_core::topics::{replies_topic, requests_topic};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, Money};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How an agent reaches the gateway and how patient it is.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    /// Time to wait for a receipt before publishing the same request again.
    pub resend_interval: Duration,
    /// Time after which `pay` gives up waiting (the request stays in the outbox).
    pub receipt_timeout: Duration,
    pub outbox_dir: PathBuf,
}

/// A receipt whose signature verified under the gateway's receipt key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    pub receipt: Receipt,
    /// The signed envelope exactly as received: the terminal's proof of what it was told.
    pub envelope: Vec<u8>,
}

impl VerifiedReceipt {
    pub fn code(&self) -> Option<ErrorCode> {
        self.receipt.error_code()
    }
}

pub struct Agent {
    bundle: Arc<DeviceBundle>,
    client: AsyncClient,
    replies: mpsc::Receiver<VerifiedReceipt>,
    /// Receipts that arrived for another idempotency key than the one being waited on.
    parked: HashMap<String, VerifiedReceipt>,
    outbox: Outbox,
    settings: AgentSettings,
    events: tokio::task::JoinHandle<()>,
    challenge_handler: Option<ChallengeHandler>,
}

/// What a challenged payment asks the holder.
#[derive(Debug, Clone)]
pub struct ChallengePrompt {
    pub challenge_id: String,
    /// e.g. `["totp"]`.
    pub mechanisms: Vec<String>,
    pub attempts_left: u32,
    pub expires_at_ms: u64,
    /// The payment the holder is asked to confirm (dynamic linking: the answer restates it).
    pub amount: Money,
    pub merchant_id: AccountId,
    pub message: String,
}

/// The terminal's step-up UI: given the prompt, the holder's answers as (mechanism, code).
pub type ChallengeHandler =
    Box<dyn FnMut(&ChallengePrompt) -> Option<Vec<(String, String)>> + Send + Sync>;

/// The mutual-TLS client configuration of a device bundle: its CA as the only root, its
/// certificate and key as the client identity, TLS 1.3 or 1.2.
pub fn tls_config(bundle: &DeviceBundle) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in bundle.ca_certs()? {
        roots.add(ca)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_client_auth_cert(bundle.client_cert_chain()?, bundle.client_key()?)?;
    Ok(Arc::new(config))
}

impl Agent {
    /// Connects (persistent session, client id = device id) and starts the event loop.
    pub async fn connect(bundle: DeviceBundle, settings: AgentSettings) -> Result<Agent> {
        let bundle = Arc::new(bundle);
        let device = bundle.device_id.clone();
        let mut options = MqttOptions::new(device.as_str(), settings.host.clone(), settings.port);
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(&bundle)?,
            )))
            // never a clean session: a clean session drops queued publishes on reconnect
            .set_clean_session(false)
            .set_keep_alive(settings.keep_alive)
            .set_max_packet_size(64 * 1024, 16 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // small packets, latency matters: no Nagle delay on the device's socket
        eventloop.network_options.set_tcp_nodelay(true);
        let (reply_tx, replies) = mpsc::channel(256);
        let (subscribed_tx, mut subscribed) = tokio::sync::watch::channel(false);
        let reply_topic = replies_topic(&device);
        let subscriber = client.clone();
        let verifier = bundle.clone();
        let events = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // (re)subscribe on every connection; harmless when the session kept it
                        let _ = subscriber.try_subscribe(reply_topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic == reply_topic =>
                    {
                        match verifier.verify_receipt(&publish.payload) {
                            Ok(receipt) => {
                                if reply_tx.send(receipt).await.is_err() {
                                    return;
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "dropped a reply that does not verify")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%error, "mqtt connection error; reconnecting");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        });
        let outbox = Outbox::open(&settings.outbox_dir)?;
        // wait (bounded) until replies can reach us; offline, carry on: the outbox and the
        // resend timer deliver once the gateway is reachable
        let ready = tokio::time::timeout(
            settings.receipt_timeout,
            subscribed.wait_for(|ready| *ready),
        )
        .await;
        if !matches!(ready, Ok(Ok(_))) {
            tracing::warn!(device = %device, "gateway not reachable yet; requests wait in the outbox");
        }
        Ok(Agent {
            bundle,
            client,
            replies,
            parked: HashMap::new(),
            outbox,
            settings,
            events,
            challenge_handler: None,
        })
    }

    pub fn bundle(&self) -> &DeviceBundle {
        &self.bundle
    }

    /// Pays a merchant from the device's wallet; returns the final verified receipt.
    pub async fn pay(&mut self, merchant: &AccountId, amount: Money) -> Result<VerifiedReceipt> {
        self.pay_with_payer(merchant, amount, None).await
    }

    /// Pays a merchant, naming the customer's card or UPI address read at the terminal. The
    /// outbox keeps the signed request (the payer inside it) until the final receipt: on a
    /// terminal, that directory must be as protected as the signing key.
    pub async fn pay_with_payer(
        &mut self,
        merchant: &AccountId,
        amount: Money,
        payer: Option<paygate_core::payer::Payer>,
    ) -> Result<VerifiedReceipt> {
        self.submit(Operation::MerchantPayment {
            merchant_id: merchant.clone(),
            amount,
            payer,
        })
        .await
    }

    /// Signs any operation (P2P transfer, cash-in, cash-out, refund, payment) under a fresh
    /// idempotency key and counter, keeps it in the outbox and delivers it until the final
    /// verified receipt.
    pub async fn submit(&mut self, operation: Operation) -> Result<VerifiedReceipt> {
        let request = Request {
            device_id: self.bundle.device_id.clone(),
            idempotency_key: IdempotencyKey::parse(&hex::encode(rand::random::<[u8; 16]>()))?,
            counter: self.outbox.next_counter()?,
            created_at_ms: now_ms(),
            operation,
        };
        let envelope = self
            .bundle
            .signing_key
            .seal(REQUEST_CONTENT_TYPE, &request.to_payload());
        self.outbox.put(&request.idempotency_key, &envelope)?;
        self.deliver(&request.idempotency_key, &envelope).await
    }

    /// Asks the gateway what became of one of this device's requests, by its idempotency
    /// key: the answer is that request's own signed receipt, exactly as first sent (final,
    /// challenged or pending), or `REQUEST_UNKNOWN` naming the key when nothing arrived under
    /// it (then sending the request again under the same key is safe). Nothing is decided.
    pub async fn status(&mut self, key: &IdempotencyKey) -> Result<VerifiedReceipt> {
        let request = Request {
            device_id: self.bundle.device_id.clone(),
            idempotency_key: IdempotencyKey::parse(&hex::encode(rand::random::<[u8; 16]>()))?,
            counter: self.outbox.next_counter()?,
            created_at_ms: now_ms(),
            operation: Operation::StatusEnquiry {
                idempotency_key: key.clone(),
            },
        };
        let envelope = self
            .bundle
            .signing_key
            .seal(REQUEST_CONTENT_TYPE, &request.to_payload());
        let deadline = Instant::now() + self.settings.receipt_timeout;
        loop {
            self.publish_raw(envelope.clone()).await?;
            let round_end = (Instant::now() + self.settings.resend_interval).min(deadline);
            // the answer names the enquired request; a refusal of the enquiry itself names
            // the enquiry
            if let Some(receipt) = self.next_reply_until(round_end, Some(key.as_str())).await {
                return Ok(receipt);
            }
            if let Some(refused) = self.parked.remove(request.idempotency_key.as_str()) {
                match refused.receipt.retry_after_ms {
                    // the front's admission limits: ask again after the wait
                    Some(wait_ms) if refused.code() == Some(ErrorCode::Overloaded) => {
                        let resend_at =
                            (Instant::now() + Duration::from_millis(wait_ms)).min(deadline);
                        tokio::time::sleep_until(resend_at.into()).await;
                    }
                    _ => return Ok(refused),
                }
            }
            if Instant::now() >= deadline {
                bail!("no answer to the status enquiry for {key}");
            }
        }
    }

    /// Sends every request left in the outbox again (after a reboot or an outage) and returns
    /// their receipts.
    pub async fn drain_outbox(&mut self) -> Result<Vec<VerifiedReceipt>> {
        let mut receipts = Vec::new();
        for (key, envelope) in self.outbox.pending()? {
            receipts.push(self.deliver(&key, &envelope).await?);
        }
        Ok(receipts)
    }

    /// Sets what the terminal does when a payment is challenged (step-up): show the prompt to
    /// the holder and return their answers (mechanism name, code), or `None` to let it expire.
    /// The firmware or wallet app plugs its UI in here; the CLI asks on the terminal.
    pub fn on_challenge(&mut self, handler: ChallengeHandler) {
        self.challenge_handler = Some(handler);
    }

    /// Answers a challenge: a signed `challenge_answer` request restating the amount and payee
    /// the holder approved. Returns the envelope, resent until the payment's receipt is final.
    fn answer_challenge(&mut self, receipt: &VerifiedReceipt) -> Result<Option<Vec<u8>>> {
        let (Some(challenge), Some(amount), Some(merchant)) = (
            receipt.receipt.challenge.as_ref(),
            receipt.receipt.amount.as_ref(),
            receipt.receipt.merchant_id.as_ref(),
        ) else {
            return Ok(None);
        };
        let Some(handler) = self.challenge_handler.as_mut() else {
            return Ok(None);
        };
        let prompt = ChallengePrompt {
            challenge_id: challenge.challenge_id.clone(),
            mechanisms: challenge.mechanisms.clone(),
            attempts_left: challenge.attempts_left,
            expires_at_ms: challenge.expires_at_ms,
            amount: paygate_core::request::decode_money(amount)
                .map_err(|e| anyhow::anyhow!("challenge amount: {e}"))?,
            merchant_id: AccountId::parse(merchant)?,
            message: receipt.receipt.message.clone().unwrap_or_default(),
        };
        let Some(responses) = handler(&prompt) else {
            return Ok(None);
        };
        let mut decoded = Vec::new();
        for (name, code) in responses {
            let mechanism = paygate_core::identity::Mechanism::parse(&name)
                .ok_or_else(|| anyhow::anyhow!("unknown mechanism {name}"))?;
            decoded.push((mechanism, paygate_core::request::OneTimeCode::new(code)));
        }
        let request = Request {
            device_id: self.bundle.device_id.clone(),
            idempotency_key: IdempotencyKey::parse(&hex::encode(rand::random::<[u8; 16]>()))?,
            counter: self.outbox.next_counter()?,
            created_at_ms: now_ms(),
            operation: Operation::ChallengeAnswer {
                challenge_id: prompt.challenge_id.clone(),
                merchant_id: prompt.merchant_id.clone(),
                amount: prompt.amount,
                responses: decoded,
            },
        };
        Ok(Some(
            self.bundle
                .signing_key
                .seal(REQUEST_CONTENT_TYPE, &request.to_payload()),
        ))
    }

    /// Publishes an outbox entry until a final receipt for its key arrives. A challenged
    /// payment is answered through the challenge handler; the wait then lasts until the
    /// challenge's expiry.
    async fn deliver(&mut self, key: &IdempotencyKey, envelope: &[u8]) -> Result<VerifiedReceipt> {
        let mut deadline = Instant::now() + self.settings.receipt_timeout;
        // the answer in flight, and which (challenge, attempts left) it answers
        let mut answer: Option<(Vec<u8>, String, u32)> = None;
        loop {
            match &answer {
                Some((bytes, _, _)) => self.publish_raw(bytes.clone()).await?,
                None => self.publish_raw(envelope.to_vec()).await?,
            }
            let round_end = (Instant::now() + self.settings.resend_interval).min(deadline);
            if let Some(receipt) = self.next_reply_until(round_end, Some(key.as_str())).await {
                if receipt.receipt.outcome == Outcome::Challenged {
                    if let Some(challenge) = receipt.receipt.challenge.clone() {
                        let expiry =
                            Duration::from_millis(challenge.expires_at_ms.saturating_sub(now_ms()));
                        deadline = deadline
                            .max(Instant::now() + expiry + self.settings.resend_interval * 2);
                        let answered = answer.as_ref().is_some_and(|(_, id, left)| {
                            *id == challenge.challenge_id && *left == challenge.attempts_left
                        });
                        if !answered {
                            answer = self.answer_challenge(&receipt)?.map(|bytes| {
                                (
                                    bytes,
                                    challenge.challenge_id.clone(),
                                    challenge.attempts_left,
                                )
                            });
                            if answer.is_some() {
                                continue; // send the answer now
                            }
                        }
                    }
                    tokio::time::sleep_until(round_end.into()).await;
                    if Instant::now() >= deadline {
                        bail!("the challenge for {key} was not completed in time");
                    }
                    continue;
                }
                if receipt.receipt.outcome == Outcome::Pending {
                    // the network has not answered: the request stays in the outbox (a later
                    // drain gets the final receipt) and the terminal shows it as pending
                    return Ok(receipt);
                }
                let retryable = matches!(
                    receipt.code(),
                    Some(
                        ErrorCode::InternalError
                            // an enquiry's answer that overtook the request itself
                            | ErrorCode::RequestUnknown
                            | ErrorCode::Overloaded
                            | ErrorCode::AuditUnavailable
                            | ErrorCode::KeyUnavailable
                    )
                );
                if receipt.receipt.outcome != Outcome::Rejected || !retryable {
                    self.outbox.remove(key)?;
                    return Ok(receipt);
                }
                // the gateway asks for the same bytes again: after the wait it names (the
                // front's admission limits), or at the end of this round
                let resend_at = match receipt.receipt.retry_after_ms {
                    Some(wait_ms) => {
                        // up to a quarter more, so terminals told the same wait spread out
                        let jitter = rand::random::<u64>() % (wait_ms / 4 + 1);
                        (Instant::now() + Duration::from_millis(wait_ms + jitter)).min(deadline)
                    }
                    None => round_end,
                };
                tokio::time::sleep_until(resend_at.into()).await;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no receipt for {key} within {:?}; it stays in the outbox",
                    self.settings.receipt_timeout
                );
            }
        }
    }

    /// Publishes bytes on the device's request topic as they are (tests use this to send
    /// hostile envelopes through a real client).
    pub async fn publish_raw(&self, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(
                requests_topic(&self.bundle.device_id),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .context("queueing the publish")
    }

    /// The next verified reply, for `key` if given (replies for other keys are parked).
    pub async fn next_reply(
        &mut self,
        timeout: Duration,
        key: Option<&str>,
    ) -> Option<VerifiedReceipt> {
        self.next_reply_until(Instant::now() + timeout, key).await
    }

    async fn next_reply_until(
        &mut self,
        deadline: Instant,
        key: Option<&str>,
    ) -> Option<VerifiedReceipt> {
        if let Some(key) = key {
            if let Some(parked) = self.parked.remove(key) {
                return Some(parked);
            }
        }
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let receipt = tokio::time::timeout(remaining, self.replies.recv())
                .await
                .ok()??;
            match (key, receipt.receipt.idempotency_key.as_deref()) {
                (None, _) => return Some(receipt),
                (Some(wanted), Some(got)) if wanted == got => return Some(receipt),
                // a notice with no key (the front refused something) concerns whoever waits
                (Some(_), None) => return Some(receipt),
                (Some(_), Some(other)) => {
                    if self.parked.len() < 1024 {
                        self.parked.insert(other.to_owned(), receipt);
                    }
                }
            }
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.events.abort();
    }
}

impl DeviceBundle {
    /// Verifies a reply envelope under the gateway's receipt key and decodes it strictly.
    pub fn verify_receipt(&self, envelope: &[u8]) -> Result<VerifiedReceipt> {
        verify_receipt(
            envelope,
            &self.gateway_key,
            &self.gateway_key_id,
            &self.device_id,
        )
    }
}

/// The agent's whole check of a reply: a COSE envelope signed by `gateway_key` (under
/// `gateway_key_id`, for receipts), holding a strictly decoded receipt for `device`.
pub fn verify_receipt(
    envelope: &[u8],
    gateway_key: &VerifyingKey,
    gateway_key_id: &str,
    device: &DeviceId,
) -> Result<VerifiedReceipt> {
    let parsed = UnverifiedEnvelope::parse(envelope).map_err(|e| anyhow::anyhow!(e))?;
    let payload = parsed
        .verify(gateway_key, gateway_key_id, RECEIPT_CONTENT_TYPE)
        .map_err(|e| anyhow::anyhow!(e))?;
    let receipt = Receipt::decode(payload).context("receipt payload")?;
    if receipt.device_id != device.as_str() {
        bail!("receipt is for device {}", receipt.device_id);
    }
    Ok(VerifiedReceipt {
        receipt,
        envelope: envelope.to_vec(),
    })
}

pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
