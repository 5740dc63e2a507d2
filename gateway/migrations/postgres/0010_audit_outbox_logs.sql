-- Each gateway replica keeps its own audit log (its own journal, chain and log id) over one
-- shared database: an outbox row names the log it belongs to, and its place is a place in
-- that log's sequence. Rows written before this migration have an empty log id; the first
-- gateway to open its journal afterwards takes them into its log (Store::adopt_unlogged_audit_rows).
ALTER TABLE audit_outbox ADD COLUMN log_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_outbox DROP CONSTRAINT audit_outbox_pkey;
ALTER TABLE audit_outbox ADD PRIMARY KEY (log_id, outbox_id);
