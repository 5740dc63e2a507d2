//! The batch: the requests the checker gathered while the decider was busy, each in a slot that moves from
//! `Verified` (signature and freshness checked) to `Prepared` (key-provider work done, outside
//! the transaction) to `Done` (its signed reply). The audit records and the UPI handoffs the
//! batch produces travel with it.

use crate::products::Prepared;
use crate::upi::Handoff;
use bytes::Bytes;
use paygate_core::audit::AuditEvent;
use paygate_core::request::Request;
use paygate_core::{AccountId, DeviceId, ErrorCode};
use std::time::Instant;

/// A message taken off a device's request topic. `device` comes from the topic, which the
/// device front (or an external broker's ACL) confines to the certificate's identity.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub device: DeviceId,
    pub message: Bytes,
    pub received_at: Instant,
    /// What acknowledges it at the external broker once the request's batch is released
    /// (none from the embedded broker, whose local link needs no acknowledgement, and for
    /// QoS 0).
    pub ack: Option<Ack>,
}

/// An external broker's delivery to acknowledge: its packet id within one broker session (a
/// new session numbers its deliveries afresh, so an id from an older one acknowledges
/// nothing and is not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub session: u64,
    pub pkid: u16,
}

/// A signed reply for a device's reply topic.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub device: DeviceId,
    pub receipt: Vec<u8>,
    pub received_at: Instant,
}

/// A request whose envelope, signature, sender binding and freshness are checked.
pub struct Verified {
    pub request: Request,
    pub body_sha256: Vec<u8>,
    /// The sending device's account, from its enrolment.
    pub wallet: AccountId,
    /// Too old or too far ahead (`REQUEST_EXPIRED`, `REQUEST_FROM_FUTURE`): refused unless
    /// it is a resend of a decided request, which gets its first answer.
    pub stale: Option<ErrorCode>,
}

pub enum Stage {
    /// Taken off the queue, not yet looked at.
    Received,
    Verified(Box<Verified>),
    Prepared(Box<Prepared>),
    Done(Outbound),
}

pub struct Slot {
    pub inbound: Inbound,
    pub stage: Stage,
    /// Carried from `Verified` (see there).
    pub stale: Option<ErrorCode>,
}

pub struct Batch {
    /// The batch's one clock reading: every decision in it is made at this moment.
    pub now_ms: u64,
    pub slots: Vec<Slot>,
    /// Audit records, added to the outbox in the batch's transaction.
    pub events: Vec<AuditEvent>,
    /// UPI payments for the worker, sent once the batch commits.
    pub handoffs: Vec<Handoff>,
}

impl Batch {
    pub fn new(inbound: Vec<Inbound>, now_ms: u64) -> Batch {
        Batch {
            now_ms,
            slots: inbound
                .into_iter()
                .map(|inbound| Slot {
                    inbound,
                    stage: Stage::Received,
                    stale: None,
                })
                .collect(),
            events: Vec::new(),
            handoffs: Vec::new(),
        }
    }

    /// Adds requests that arrived while the batch was gathering, to be checked.
    pub fn admit(&mut self, inbound: impl IntoIterator<Item = Inbound>) {
        self.slots.extend(inbound.into_iter().map(|inbound| Slot {
            inbound,
            stage: Stage::Received,
            stale: None,
        }));
    }

    /// Requests still to be decided.
    pub fn prepared_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.stage, Stage::Prepared(_)))
            .count()
    }

    /// The replies, in the order the requests came. Every slot has one by the end of a
    /// batch; one that does not is a bug, logged, and its device's resend is answered.
    pub fn replies(self) -> Vec<Outbound> {
        self.slots
            .into_iter()
            .filter_map(|slot| match slot.stage {
                Stage::Done(reply) => Some(reply),
                _ => {
                    tracing::error!(device = %slot.inbound.device, "request left the batch without a reply");
                    None
                }
            })
            .collect()
    }
}
