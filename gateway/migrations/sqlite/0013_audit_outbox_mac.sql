-- Authenticated outbox rows (gateway/src/audit_outbox.rs): a row's id is its place in the
-- outbox sequence, taken by the writer (one more than the highest, under the write lock)
-- rather than by AUTOINCREMENT, so nothing outside the gateway's writers can move the sequence;
-- each row carries an HMAC-SHA256 over its id and its text, under a key derived from the
-- audit signing key. Rows written before this migration have no MAC and are journaled as
-- audit_outbox_tampered records ("has no MAC"): stop the gateway cleanly before upgrading.
CREATE TABLE audit_outbox_mac (
    outbox_id  INTEGER PRIMARY KEY,
    event_json TEXT NOT NULL,
    mac        BLOB
);
INSERT INTO audit_outbox_mac (outbox_id, event_json)
    SELECT outbox_id, event_json FROM audit_outbox;
DROP TABLE audit_outbox;
ALTER TABLE audit_outbox_mac RENAME TO audit_outbox;
