-- Step-up authentication. A challenged payment waits here (durably: it survives a restart)
-- until it is answered, fails or expires; only then is it decided and recorded in `requests`.
-- The payer is kept as encrypted as in payment_instruments; codes are kept only as hashes.
CREATE TABLE identity_challenges (
    challenge_id      TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL,
    wallet_account_id TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    counter           INTEGER NOT NULL,
    body_sha256       BLOB NOT NULL,
    merchant_id       TEXT NOT NULL,
    amount_minor      INTEGER NOT NULL,
    currency          TEXT NOT NULL,
    payer_kind        TEXT,
    payer_ct          BLOB,
    payer_bidx        BLOB,
    payer_masked      TEXT,
    mechanisms        TEXT NOT NULL,
    risk              TEXT NOT NULL,
    oob_code_sha256   BLOB,
    attempts          INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'passed', 'failed', 'expired')),
    receipt           BLOB NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    expires_at_ms     INTEGER NOT NULL,
    UNIQUE (device_id, idempotency_key),
    UNIQUE (device_id, counter)
);
CREATE INDEX identity_challenges_open ON identity_challenges (state, expires_at_ms);

-- Validate pass: when the holder last passed each mechanism.
CREATE TABLE identity_passes (
    wallet_account_id TEXT NOT NULL,
    mechanism         TEXT NOT NULL,
    passed_at_ms      INTEGER NOT NULL,
    PRIMARY KEY (wallet_account_id, mechanism)
);

CREATE TABLE identity_lockouts (
    wallet_account_id TEXT NOT NULL,
    mechanism         TEXT NOT NULL,
    locked_until_ms   INTEGER NOT NULL,
    PRIMARY KEY (wallet_account_id, mechanism)
);

-- The TOTP replay guard: the last time step accepted per holder; a code is accepted once.
CREATE TABLE totp_used_steps (
    wallet_account_id TEXT PRIMARY KEY,
    last_step         INTEGER NOT NULL
);

-- Customer PINs as Argon2id PHC strings (salted, slow); never the PIN.
CREATE TABLE customer_pins (
    wallet_account_id TEXT PRIMARY KEY,
    pin_phc           TEXT NOT NULL,
    set_at_ms         INTEGER NOT NULL
);
