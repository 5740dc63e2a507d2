-- The payer instrument of a decided request (card PAN or UPI address), encrypted, with a blind
-- index for lookups (disputes, refunds) and the masked form receipts show. Never the UPI PIN
-- credential block: that is passed on and forgotten. Append-only like the requests it belongs to.
CREATE TABLE payment_instruments (
    device_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('card', 'upi')),
    value_ct        BLOB NOT NULL,
    value_bidx      BLOB NOT NULL,
    masked          TEXT NOT NULL,
    PRIMARY KEY (device_id, idempotency_key)
);
CREATE INDEX payment_instruments_by_value ON payment_instruments (value_bidx);
CREATE TRIGGER payment_instruments_are_append_only_update BEFORE UPDATE ON payment_instruments
BEGIN SELECT RAISE(ABORT, 'payment instruments are append-only'); END;
