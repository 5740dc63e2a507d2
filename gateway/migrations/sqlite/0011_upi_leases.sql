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
