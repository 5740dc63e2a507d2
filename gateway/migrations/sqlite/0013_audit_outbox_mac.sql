-- Authenticated outbox rows (gateway/src/audit_outbox.rs): each row's place in the outbox's
-- own sequence and an HMAC-SHA256 over that place and its text, under a key derived from the
-- audit signing key. Rows written before this migration have neither and are journaled as
-- audit_outbox_tampered records ("has no MAC"): stop the gateway cleanly before upgrading
-- (a clean stop seals and empties the outbox).
ALTER TABLE audit_outbox ADD COLUMN chain_seq INTEGER;
ALTER TABLE audit_outbox ADD COLUMN mac BLOB;
-- writers take the place after the highest one (a copied row cannot lower it)
CREATE INDEX audit_outbox_place ON audit_outbox (chain_seq);
