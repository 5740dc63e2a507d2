-- HTTP API writes: the first answer to each (caller, Idempotency-Key), kept so a retry gets
-- it again, and the hash of what was asked, so the same key with another request is refused.
CREATE TABLE http_idempotency (
    caller           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_sha256   BYTEA NOT NULL,
    status           INTEGER NOT NULL,
    response_json    TEXT NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);
-- a wallet's history, newest first, a page at a time
CREATE INDEX postings_by_account_newest ON postings (account_id, posting_id);

-- Operator actions that wait for a second operator (a funding above
-- http.operator.funding_approval_min_minor): who asked, who decided, and what came of it.
CREATE TABLE operator_approvals (
    approval_id    TEXT PRIMARY KEY,
    action         TEXT NOT NULL CHECK (action IN ('funding')),
    request_json   TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('awaiting_approval', 'done', 'rejected', 'refused')),
    decided_by     TEXT,
    decided_at_ms  BIGINT,
    tx_id          TEXT,
    code           TEXT
);

-- A phone or VPA names one wallet: a P2P transfer to an alias must never reach whichever of two
-- wallets a lookup happens to find first.
DROP INDEX wallet_profiles_by_phone;
DROP INDEX wallet_profiles_by_vpa;
CREATE UNIQUE INDEX wallet_profiles_by_phone ON wallet_profiles (phone_bidx);
CREATE UNIQUE INDEX wallet_profiles_by_vpa ON wallet_profiles (vpa_bidx);

-- A device revoked through the operator API: suspended, and never active again under its id.
ALTER TABLE devices ADD COLUMN revoked_at_ms BIGINT;

-- One-time enrolment tokens an operator issues for a device id and the account it will pay
-- from; only the token's SHA-256 is kept. A device enrols its own signing key with one.
CREATE TABLE enrolment_tokens (
    token_sha256   BYTEA PRIMARY KEY,
    device_id      TEXT NOT NULL,
    account_id     TEXT NOT NULL,
    issued_by      TEXT NOT NULL,
    issued_at_ms   BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    used_at_ms     BIGINT,
    public_key     BYTEA
);
