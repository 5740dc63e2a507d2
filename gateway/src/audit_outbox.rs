//! Authenticated outbox rows (PCI DSS 10.3.2). An audit event waits in the database's
//! `audit_outbox` table between the commit that wrote it and the journal writer that appends
//! it to the fsync'd, hash-chained journal. In that window someone with write access to the
//! database, and not to the gateway's keys, could insert, alter or remove a row.
//!
//! A row's id is therefore its place in the outbox's sequence, taken by the writer (one more
//! than the highest, under the outbox's writer lock; no database sequence an insider could
//! reset), and every row carries an HMAC-SHA256 over that place and its text, under a key
//! derived from the audit signing key. The journal writer knows the last place it journaled
//! from the journal itself, never from the database, and checks each row as it drains. A row
//! whose MAC fails (inserted, altered, or copied or moved to another id) becomes an
//! `audit_outbox_tampered` record in the journal instead of an event: its content is never
//! journaled as if it were genuine. A row whose MAC holds is always journaled; when places
//! are missing before it (rows removed), an `audit_outbox_tampered` record comes first.
//!
//! What it cannot see (docs/security.md lists it all): the newest rows removed before any
//! later row is written and before the writer drains them. The gateway drains its own rows
//! before it publishes the receipts they belong to, so for payments that window is the time
//! between commit and drain.

use paygate_core::audit::{sha256, AuditEvent};
use ring::{hkdf, hmac};

/// The key that authenticates outbox rows, derived from the audit signing key's PKCS#8
/// document (HKDF-SHA256), so every process that may write audit events already holds it,
/// and the audit log the rows belong to. Gateway replicas on one database share the outbox
/// table, each its own log's rows (its own places, its own journal); a row's MAC covers its
/// log id, so a row moved from one log to another fails its check there.
pub struct OutboxKey {
    key: hmac::Key,
    log_id: String,
}

impl std::fmt::Debug for OutboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutboxKey(.., log {})", self.log_id)
    }
}

const HKDF_SALT: &[u8] = b"paygate audit outbox";
const HKDF_INFO: &[u8] = b"outbox row mac v1";

impl OutboxKey {
    pub fn derive(audit_key_pkcs8: &[u8], log_id: &str) -> OutboxKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(audit_key_pkcs8);
        let info = [HKDF_INFO];
        // expanding 32 bytes from SHA-256 is within HKDF's limit: this cannot fail
        let key = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, audit_key_pkcs8));
        OutboxKey {
            key,
            log_id: log_id.to_owned(),
        }
    }

    /// The log whose rows this key writes and reads.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// What a row's MAC covers: its log id (length-prefixed), its place, its text. A row
    /// written before logs had ids (`log_id` empty in the table) was tagged over its place and
    /// text only ([`OutboxKey::verify_unlogged`]).
    fn message(log_id: Option<&str>, place: u64, event_json: &str) -> Vec<u8> {
        let mut message = Vec::with_capacity(10 + 8 + event_json.len());
        if let Some(log_id) = log_id {
            let length = u16::try_from(log_id.len()).unwrap_or(u16::MAX);
            message.extend_from_slice(&length.to_be_bytes());
            message.extend_from_slice(log_id.as_bytes());
        }
        message.extend_from_slice(&place.to_be_bytes());
        message.extend_from_slice(event_json.as_bytes());
        message
    }

    /// The MAC of this log's row at `place` (its id) holding `event_json`.
    pub fn tag(&self, place: u64, event_json: &str) -> Vec<u8> {
        hmac::sign(
            &self.key,
            &OutboxKey::message(Some(&self.log_id), place, event_json),
        )
        .as_ref()
        .to_vec()
    }

    fn verify(&self, place: u64, event_json: &str, mac: &[u8]) -> bool {
        let message = OutboxKey::message(Some(&self.log_id), place, event_json);
        hmac::verify(&self.key, &message, mac).is_ok()
    }

    /// The MAC a gateway from before outbox rows named their log gave the row at `place`
    /// (the upgrade tests write such rows).
    pub fn tag_unlogged(&self, place: u64, event_json: &str) -> Vec<u8> {
        hmac::sign(&self.key, &OutboxKey::message(None, place, event_json))
            .as_ref()
            .to_vec()
    }

    /// Whether `mac` is the MAC of a row written before outbox rows named their log.
    pub fn verify_unlogged(&self, place: u64, event_json: &str, mac: &[u8]) -> bool {
        hmac::verify(&self.key, &OutboxKey::message(None, place, event_json), mac).is_ok()
    }
}

/// An outbox row as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's place in the outbox sequence.
    pub outbox_id: u64,
    pub mac: Option<Vec<u8>>,
    pub event_json: String,
}

/// What the check makes of one row.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    /// Why the row's place does not follow the last authentic row's (rows removed, copied or
    /// moved): a finding recorded before the row, which is still journaled (its MAC holds).
    pub out_of_place: Option<String>,
    /// The row's event, or why it is not journaled as one (its MAC fails).
    pub event: Result<AuditEvent, String>,
}

/// The journal writer's view of the outbox sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxChain {
    /// The place of the last authentic row journaled (0: none yet); `None` when not known
    /// (the anchor row is gone), and then the next authentic row is the anchor.
    last: Option<u64>,
    /// Rows since that one whose MAC failed: each may stand for a genuine row altered.
    untrusted: u64,
}

impl OutboxChain {
    /// After the row at place `last` (0: an empty outbox), or not knowing where.
    pub fn after(last: Option<u64>) -> OutboxChain {
        OutboxChain { last, untrusted: 0 }
    }

    /// The place of the last authentic row journaled.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Checks the next row in outbox id order.
    ///
    /// A row whose MAC fails is never journaled as an event. A row whose MAC holds always
    /// is, so removing, copying or moving rows cannot keep a genuine event out of the
    /// journal; a place that does not follow (places missing, or one at or before the last)
    /// adds a finding before it, and the row becomes the new anchor.
    pub fn check(&mut self, key: &OutboxKey, row: &OutboxRow) -> Checked {
        let id = row.outbox_id;
        let untrusted = |chain: &mut OutboxChain, why: String| {
            chain.untrusted += 1;
            Checked {
                out_of_place: None,
                event: Err(format!(
                    "outbox row {id} {why}; its content ({} bytes, sha256 {}) is not journaled",
                    row.event_json.len(),
                    hex::encode(sha256(row.event_json.as_bytes()))
                )),
            }
        };
        let place = row.outbox_id;
        let Some(mac) = row.mac.as_deref() else {
            return untrusted(self, "has no MAC".into());
        };
        if !key.verify(place, &row.event_json, mac) {
            return untrusted(
                self,
                "fails its MAC: inserted, altered or moved outside the gateway".into(),
            );
        }
        let out_of_place = match self.last {
            Some(last) if place <= last => Some(format!(
                "outbox row {id} is not after row {last}, the last journaled: the rows after \
                 it were removed and the outbox written again from lower"
            )),
            // each untrusted row in between may be a genuine one altered, so it fills a place
            Some(last) if place > last + 1 + self.untrusted => Some(format!(
                "outbox rows {} to {} are missing before outbox row {id} \
                 ({} rows in between failed their MAC): removed",
                last + 1,
                place - 1,
                self.untrusted
            )),
            _ => None,
        };
        self.last = Some(place);
        self.untrusted = 0;
        let event = serde_json::from_str(&row.event_json)
            .map_err(|e| format!("outbox row {id} is authentic but not an event: {e}"));
        Checked {
            out_of_place,
            event,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use paygate_core::audit::{AuditOutcome, EventType};
    use proptest::prelude::*;

    fn key() -> OutboxKey {
        OutboxKey::derive(b"a test audit key document", "paygate-a")
    }

    #[test]
    fn a_row_moved_to_another_log_fails_its_check_there() {
        let a = key();
        let b = OutboxKey::derive(b"a test audit key document", "paygate-b");
        let json = event(1);
        let mac = a.tag(1, &json);
        assert!(a.verify(1, &json, &mac));
        assert!(!b.verify(1, &json, &mac), "log b took log a's row");
        // nor does a log id run into the place: "paygate-a" at 1 is not "paygate-" at other
        let shifted = OutboxKey::derive(b"a test audit key document", "paygate-");
        assert!(!shifted.verify(1, &json, &mac));
        // a row from before logs had ids checks only as one
        let unlogged = hmac::sign(&a.key, &OutboxKey::message(None, 1, &json));
        assert!(a.verify_unlogged(1, &json, unlogged.as_ref()));
        assert!(!a.verify(1, &json, unlogged.as_ref()));
    }

    fn event(n: u64) -> String {
        serde_json::to_string(&AuditEvent::new(
            1_700_000_000_000 + n,
            EventType::AdminAction,
            "operator:test",
            "cli:test",
            AuditOutcome::Success,
            "cli",
            format!("account:{n}"),
        ))
        .unwrap()
    }

    /// Rows as honest writers make them: places (ids) 1.. in order.
    fn honest(key: &OutboxKey, count: u64) -> Vec<OutboxRow> {
        (1..=count)
            .map(|n| OutboxRow {
                outbox_id: n,
                mac: Some(key.tag(n, &event(n))),
                event_json: event(n),
            })
            .collect()
    }

    /// What a database insider can do to rows not yet journaled, without the key: the table
    /// is theirs (ids are unique; the reader sees rows in id order).
    #[derive(Debug, Clone)]
    enum Tamper {
        /// Insert a row at a free id, with a made-up MAC or none.
        Insert { id: u64, with_mac: bool },
        /// Change a row's text, keeping its id and MAC.
        Alter { at: usize },
        /// Remove a row that has a successor.
        Remove { at: usize },
        /// Give a row another (free) id, text and MAC kept.
        Move { at: usize, to: u64 },
        /// Put a copy of a row (text and MAC) at a free id.
        Copy { at: usize, to: u64 },
    }

    fn tamper() -> impl Strategy<Value = Tamper> {
        prop_oneof![
            (0u64..90, any::<bool>()).prop_map(|(id, with_mac)| Tamper::Insert { id, with_mac }),
            (0usize..64).prop_map(|at| Tamper::Alter { at }),
            (0usize..64).prop_map(|at| Tamper::Remove { at }),
            (0usize..64, 0u64..90).prop_map(|(at, to)| Tamper::Move { at, to }),
            (0usize..64, 0u64..90).prop_map(|(at, to)| Tamper::Copy { at, to }),
        ]
    }

    /// Applies the tamper; false when it changes nothing (or removes the newest row, which
    /// the chain cannot see and the module's documentation says so).
    fn apply(rows: &mut Vec<OutboxRow>, tamper: &Tamper) -> bool {
        let len = rows.len();
        let free =
            |rows: &Vec<OutboxRow>, id: u64| id > 0 && rows.iter().all(|r| r.outbox_id != id);
        let changed = match *tamper {
            Tamper::Insert { id, with_mac } => {
                if !free(rows, id) {
                    return false;
                }
                rows.push(OutboxRow {
                    outbox_id: id,
                    mac: with_mac.then(|| vec![0x5a; 32]),
                    event_json: event(1000 + id),
                });
                true
            }
            Tamper::Alter { at } => {
                let at = at % len;
                rows[at].event_json = rows[at].event_json.replace("account:", "account:x");
                true
            }
            Tamper::Remove { at } => {
                let at = at % len;
                if at + 1 == len {
                    return false;
                }
                rows.remove(at);
                true
            }
            Tamper::Move { at, to } => {
                let at = at % len;
                if !free(rows, to) || (at + 1 == len && to < rows[at].outbox_id) {
                    // moving the newest row down is removing it from the tail
                    return false;
                }
                rows[at].outbox_id = to;
                true
            }
            Tamper::Copy { at, to } => {
                let at = at % len;
                if !free(rows, to) {
                    return false;
                }
                let mut copy = rows[at].clone();
                copy.outbox_id = to;
                rows.push(copy);
                true
            }
        };
        rows.sort_by_key(|r| r.outbox_id);
        changed
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Entry {
        Finding,
        /// An event journaled: its number, and whether its content is the honest one.
        Event(u64, bool),
    }

    /// What the journal gets from `rows`, drained in one go.
    fn journal(rows: &[OutboxRow], last: Option<u64>) -> Vec<Entry> {
        let key = key();
        let mut chain = OutboxChain::after(last);
        let mut entries = Vec::new();
        for row in rows {
            let checked = chain.check(&key, row);
            if checked.out_of_place.is_some() {
                entries.push(Entry::Finding);
            }
            entries.push(match checked.event {
                Ok(event) => {
                    let n = event.time_ms - 1_700_000_000_000;
                    Entry::Event(n, event.resource == format!("account:{n}"))
                }
                Err(_) => Entry::Finding,
            });
        }
        entries
    }

    proptest! {
        /// Honest rows, drained in any number of pieces, give no finding and every event once,
        /// in order.
        #[test]
        fn honest_rows_pass_in_order(count in 1u64..60, cut in 0usize..60) {
            let rows = honest(&key(), count);
            let cut = cut % rows.len();
            let key = key();
            let mut chain = OutboxChain::after(Some(0));
            let mut seen = Vec::new();
            for piece in [&rows[..cut], &rows[cut..]] {
                for row in piece {
                    let checked = chain.check(&key, row);
                    prop_assert!(checked.out_of_place.is_none());
                    seen.push(checked.event.unwrap().time_ms - 1_700_000_000_000);
                }
            }
            prop_assert_eq!(seen, (1..=count).collect::<Vec<_>>());
        }

        /// Tampering with rows not yet journaled:
        /// - is found, unless the journal gets what the honest writers wrote, or the first of
        ///   it (the newest rows removed, which the chain cannot see; or a row removed and its
        ///   copy put in its place);
        /// - never puts forged or altered content in the journal as an event;
        /// - and never keeps an authentic row out of it (a copy is journaled too: its MAC
        ///   holds; the finding the tampering raises is what marks it).
        #[test]
        fn every_tamper_is_found(count in 2u64..40, tampers in proptest::collection::vec(tamper(), 1..4)) {
            let key = key();
            let mut rows = honest(&key, count);
            let mut changed = false;
            for tamper in &tampers {
                changed |= apply(&mut rows, tamper);
            }
            prop_assume!(changed);
            let entries = journal(&rows, Some(0));
            let events: Vec<u64> = entries
                .iter()
                .filter_map(|e| match e { Entry::Event(n, _) => Some(*n), Entry::Finding => None })
                .collect();
            let found = entries.contains(&Entry::Finding);
            // the one change the chain cannot see: the newest rows gone (a prefix is left)
            let prefix = events.iter().copied().eq(1..=u64::try_from(events.len()).unwrap());
            prop_assert!(
                found || prefix,
                "no finding after {:?}: {:?}", tampers, entries
            );
            prop_assert!(
                entries.iter().all(|e| !matches!(e, Entry::Event(n, honest) if !honest || !(1..=count).contains(n))),
                "forged content journaled: {:?}", entries
            );
            let authentic = rows
                .iter()
                .filter(|r| key.verify(r.outbox_id, &r.event_json, r.mac.as_deref().unwrap_or(&[])))
                .count();
            prop_assert_eq!(events.len(), authentic, "{:?}", entries);
        }
    }

    #[test]
    fn a_removed_row_is_named_by_its_places_and_the_rest_still_journaled() {
        let mut rows = honest(&key(), 5);
        rows.remove(2); // place 3
        let key = key();
        let mut chain = OutboxChain::after(Some(0));
        let checked: Vec<Checked> = rows.iter().map(|row| chain.check(&key, row)).collect();
        assert_eq!(
            checked[2].out_of_place.as_deref(),
            Some(
                "outbox rows 3 to 3 are missing before outbox row 4 \
                 (0 rows in between failed their MAC): removed"
            )
        );
        assert!(checked.iter().all(|c| c.event.is_ok()));
        assert_eq!(chain.last(), Some(5));
    }

    #[test]
    fn a_row_altered_fills_its_place_and_is_not_journaled() {
        let mut rows = honest(&key(), 4);
        rows[1].event_json = rows[1].event_json.replace("account:2", "account:9");
        rows[2].mac = None;
        let key = key();
        let mut chain = OutboxChain::after(Some(0));
        let checked: Vec<Checked> = rows.iter().map(|row| chain.check(&key, row)).collect();
        assert!(checked[1]
            .event
            .as_ref()
            .unwrap_err()
            .starts_with("outbox row 2 fails its MAC"));
        assert!(checked[2]
            .event
            .as_ref()
            .unwrap_err()
            .starts_with("outbox row 3 has no MAC"));
        // the two untrusted rows stand for places 2 and 3: no rows are missing
        assert!(checked[3].out_of_place.is_none() && checked[3].event.is_ok());
        assert_eq!(chain.last(), Some(4));
    }
}
