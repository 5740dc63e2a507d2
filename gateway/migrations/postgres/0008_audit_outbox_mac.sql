-- Authenticated outbox rows (gateway/src/audit_outbox.rs): a row's id is its place in the
-- outbox sequence, taken by the writer (one more than the highest, under the advisory lock)
-- rather than by a sequence, so nothing outside the gateway's writers can move it; each row
-- carries an HMAC-SHA256 over its id and its text, under a key derived from the audit signing
-- key. Rows written before this migration have no MAC and are journaled as
-- audit_outbox_tampered records ("has no MAC"): stop the gateway cleanly before upgrading.
ALTER TABLE audit_outbox ALTER COLUMN outbox_id DROP DEFAULT;
DROP SEQUENCE IF EXISTS audit_outbox_outbox_id_seq;
ALTER TABLE audit_outbox ADD COLUMN mac BYTEA;
