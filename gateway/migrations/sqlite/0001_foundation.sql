-- paygate foundation schema: devices, accounts, transfers with double-entry postings, and the
-- decided requests that make every idempotency key answer the same way forever.

CREATE TABLE accounts (
    account_id       TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('wallet', 'merchant', 'issuance')),
    currency         TEXT NOT NULL CHECK (length(currency) = 3),
    balance_minor    INTEGER NOT NULL DEFAULT 0,
    negative_allowed INTEGER NOT NULL DEFAULT 0 CHECK (negative_allowed IN (0, 1)),
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    created_at_ms    INTEGER NOT NULL,
    CHECK (negative_allowed = 1 OR balance_minor >= 0)
);

CREATE TABLE devices (
    device_id         TEXT PRIMARY KEY,
    algorithm         TEXT NOT NULL CHECK (algorithm IN ('ed25519', 'es256')),
    public_key        BLOB NOT NULL,
    wallet_account_id TEXT NOT NULL REFERENCES accounts (account_id),
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    enrolled_at_ms    INTEGER NOT NULL
);

CREATE TABLE transfers (
    tx_id           TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    device_id       TEXT,
    idempotency_key TEXT,
    currency        TEXT NOT NULL,
    amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
    created_at_ms   INTEGER NOT NULL,
    UNIQUE (device_id, idempotency_key)
);

-- One row per leg; a transfer's legs sum to zero. Debits are negative.
CREATE TABLE postings (
    posting_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id         TEXT NOT NULL REFERENCES transfers (tx_id),
    account_id    TEXT NOT NULL REFERENCES accounts (account_id),
    currency      TEXT NOT NULL,
    amount_minor  INTEGER NOT NULL CHECK (amount_minor <> 0)
);
CREATE INDEX postings_by_account ON postings (account_id);

-- Every request the pipeline decided (approved or declined), with the exact signed receipt
-- it answered, so a retry gets the same bytes back.
CREATE TABLE requests (
    device_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    counter         INTEGER NOT NULL,
    body_sha256     BLOB NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('approved', 'declined')),
    code            TEXT,
    tx_id           TEXT REFERENCES transfers (tx_id),
    receipt         BLOB NOT NULL,
    decided_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (device_id, idempotency_key),
    UNIQUE (device_id, counter)
);

-- Posted entries are never changed: corrections are new transfers.
CREATE TRIGGER postings_are_append_only_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'postings are append-only'); END;
CREATE TRIGGER postings_are_append_only_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'postings are append-only'); END;
CREATE TRIGGER transfers_are_append_only_update BEFORE UPDATE ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
CREATE TRIGGER transfers_are_append_only_delete BEFORE DELETE ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
CREATE TRIGGER requests_are_append_only_update BEFORE UPDATE ON requests
BEGIN SELECT RAISE(ABORT, 'decided requests are append-only'); END;
