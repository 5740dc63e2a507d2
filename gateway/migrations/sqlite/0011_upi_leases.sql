-- Work in flight belongs to the replica that holds a lease on it (issue 12, defect 1). A UPI
-- payment leaves for the switch only after its worker claims it (`sent_at_ms`, `worker_id`,
-- `lease_until_ms` set in one conditional update): one never claimed within the send window
-- was certainly never sent and is declined `UPI_NOT_SENT`; one claimed whose lease ran out
-- (its replica stopped mid-call) has an unknown outcome and is resolved by status checks and,
-- failing those, a reversal. A due status check is claimed the same way, so two replicas on
-- one database never check or reverse the same payment at once.
ALTER TABLE upi_payments ADD COLUMN sent_at_ms BIGINT;
ALTER TABLE upi_payments ADD COLUMN lease_until_ms BIGINT;
ALTER TABLE upi_payments ADD COLUMN worker_id TEXT;
-- payments in flight at the upgrade may have reached the switch: their outcome is unknown
UPDATE upi_payments SET sent_at_ms = created_at_ms, lease_until_ms = 0 WHERE state = 'initiated';

-- A success the ledger could not post (the merchant account changed while the network had
-- the payment) is reversed through the switch: the worker does it when `reversal_due` is set,
-- and the final receipt carries the ledger's refusal (`unpostable_code`).
ALTER TABLE upi_payments ADD COLUMN reversal_due BIGINT NOT NULL DEFAULT 0;
ALTER TABLE upi_payments ADD COLUMN unpostable_code TEXT;

-- The network's retrieval reference number (12 digits) for each payment it answered, on the
-- gateway's row and on the sandbox switch's own.
ALTER TABLE upi_payments ADD COLUMN rrn TEXT;
ALTER TABLE upi_sandbox ADD COLUMN rrn TEXT;

-- A reversal's own outcome: when it was first asked for, how often, and when the network
-- confirmed it (RBI: failed debits reversed by T+1; `paygate ledger upi-report` lists the
-- overdue ones).
ALTER TABLE upi_payments ADD COLUMN reversal_requested_at_ms BIGINT;
ALTER TABLE upi_payments ADD COLUMN reversal_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE upi_payments ADD COLUMN reversal_confirmed_at_ms BIGINT;

-- Refunds of UPI payments: posted from the merchant to the UPI settlement account when the
-- merchant's terminal asks, then sent to the network by the UPI worker (retried until the
-- network confirms), each under its own 35-character transaction id.
CREATE TABLE upi_refunds (
    refund_txn_id      TEXT PRIMARY KEY,
    payment_id         TEXT NOT NULL REFERENCES upi_payments (payment_id),
    tx_id              TEXT NOT NULL,
    amount_minor       BIGINT NOT NULL CHECK (amount_minor > 0),
    currency           TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('initiated', 'confirmed')),
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    worker_id          TEXT,
    created_at_ms      BIGINT NOT NULL,
    confirmed_at_ms    BIGINT,
    rrn                TEXT
);
CREATE INDEX upi_refunds_due ON upi_refunds (state, next_attempt_at_ms);
-- the sandbox switch's side: each refund it made, once per refund transaction id
CREATE TABLE upi_sandbox_refunds (
    refund_txn_id  TEXT PRIMARY KEY,
    txn_ref        TEXT NOT NULL,
    amount_minor   BIGINT NOT NULL,
    rrn            TEXT NOT NULL
);

-- A pay call's answer that arrives after the gateway's timer is not dropped: it resolves the
-- payment if it is still being checked, and if the payment was already decided otherwise
-- (timed out and reversed, say) the disagreement is kept here for reconciliation with the
-- network (`paygate ledger upi-report`).
CREATE TABLE upi_late_answers (
    payment_id       TEXT PRIMARY KEY,
    late_answer      TEXT NOT NULL,
    recorded_result  TEXT NOT NULL,
    at_ms            BIGINT NOT NULL
);
