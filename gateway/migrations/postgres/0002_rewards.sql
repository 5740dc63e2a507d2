-- Reward points (see the SQLite migration 0007 for the model).
CREATE TABLE points_lots (
    lot_id            TEXT PRIMARY KEY,
    wallet_account_id TEXT NOT NULL,
    points_account_id TEXT NOT NULL REFERENCES accounts (account_id),
    earn_tx_id        TEXT NOT NULL REFERENCES transfers (tx_id),
    payment_tx_id     TEXT NOT NULL REFERENCES transfers (tx_id),
    points_earned     BIGINT NOT NULL CHECK (points_earned > 0),
    points_remaining  BIGINT NOT NULL CHECK (points_remaining >= 0),
    state             TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired', 'spent')),
    active_at_ms      BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL,
    created_at_ms     BIGINT NOT NULL,
    CHECK (points_remaining <= points_earned)
);
CREATE INDEX points_lots_by_wallet ON points_lots (wallet_account_id, state, expires_at_ms);
CREATE INDEX points_lots_by_payment ON points_lots (payment_tx_id);
CREATE INDEX points_lots_due ON points_lots (state, active_at_ms, expires_at_ms);

ALTER TABLE identity_challenges ADD COLUMN redeem_points BIGINT NOT NULL DEFAULT 0;
