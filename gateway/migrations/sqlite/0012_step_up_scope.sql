-- Step-up holes (issue 12, defect 8).
-- A validate pass spares a later payment only to the payee it was passed for, and only up to
-- the amount the holder authenticated: the pass keeps both. Passes from before have neither
-- and spare nothing.
ALTER TABLE identity_passes ADD COLUMN payee_account_id TEXT;
ALTER TABLE identity_passes ADD COLUMN amount_minor BIGINT;

-- Wrong answers per wallet and mechanism across challenges, so a new challenge does not
-- reset the count: `identity.attempts_max` wrong answers within `identity.lockout_ms` lock
-- the mechanism, however many payments they were spread over. A right answer clears it.
CREATE TABLE identity_failures (
    wallet_account_id  TEXT NOT NULL,
    mechanism          TEXT NOT NULL,
    failures           BIGINT NOT NULL,
    first_failed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (wallet_account_id, mechanism)
);

-- P2P transfers and cash-outs pass the same risk rules as merchant payments and can be held
-- behind a challenge too: what the held request is. `merchant_id` is its payee (the receiving
-- wallet of a P2P transfer, the agent of a cash-out).
ALTER TABLE identity_challenges ADD COLUMN held_kind TEXT NOT NULL DEFAULT 'merchant_payment';

-- What each refund's clawback called for (taken, owed as points debt, or kept back from the
-- refund), so a later partial refund of the same payment counts all of it, not only the
-- points taken (issue 12 review).
CREATE TABLE points_clawbacks (
    refund_tx_id   TEXT PRIMARY KEY,
    payment_tx_id  TEXT NOT NULL,
    points_due     BIGINT NOT NULL CHECK (points_due >= 0)
);
CREATE INDEX points_clawbacks_by_payment ON points_clawbacks (payment_tx_id);
