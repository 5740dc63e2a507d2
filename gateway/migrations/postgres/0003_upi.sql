-- UPI (see the SQLite migration 0008). Merchants' public UPI addresses; the payments in flight through the UPI network and
-- how each ended; and the sandbox switch's own records (the network's side, which survives a
-- gateway restart as the real network would). The payer's VPA is kept encrypted like other
-- payer data; the UPI PIN credential block is never written anywhere.
CREATE TABLE merchant_vpas (
    vpa                 TEXT PRIMARY KEY,
    merchant_account_id TEXT NOT NULL REFERENCES accounts (account_id)
);

CREATE TABLE upi_payments (
    payment_id        TEXT PRIMARY KEY,
    -- pay: the customer's terminal sent it with the PIN block; collect: the merchant asked
    direction         TEXT NOT NULL DEFAULT 'pay' CHECK (direction IN ('pay', 'collect')),
    device_id         TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    counter           BIGINT NOT NULL,
    body_sha256       BYTEA NOT NULL,
    merchant_id       TEXT NOT NULL REFERENCES accounts (account_id),
    merchant_vpa      TEXT NOT NULL,
    amount_minor      BIGINT NOT NULL CHECK (amount_minor > 0),
    currency          TEXT NOT NULL,
    payer_ct          BYTEA NOT NULL,
    payer_bidx        BYTEA NOT NULL,
    payer_masked      TEXT NOT NULL,
    -- initiated: committed, the pay call not answered yet; pending: the network's answer is
    -- awaited through status checks; answered: the final answer is in, not yet settled;
    -- settled: the final receipt is recorded in `requests`.
    state             TEXT NOT NULL CHECK (state IN ('initiated', 'pending', 'answered', 'settled')),
    result            TEXT CHECK (result IN ('success', 'deemed', 'failure', 'reversed', 'timed_out', 'not_sent')),
    npci_code         TEXT,
    status_checks     BIGINT NOT NULL DEFAULT 0,
    next_check_at_ms  BIGINT,
    receipt           BYTEA NOT NULL,
    created_at_ms     BIGINT NOT NULL,
    UNIQUE (device_id, idempotency_key),
    UNIQUE (device_id, counter)
);
CREATE INDEX upi_payments_by_state ON upi_payments (state, next_check_at_ms);

CREATE TABLE upi_sandbox (
    txn_ref       TEXT PRIMARY KEY,
    scenario      TEXT NOT NULL,
    debited       BIGINT NOT NULL DEFAULT 0,
    reversed      BIGINT NOT NULL DEFAULT 0,
    status_calls  BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL
);
